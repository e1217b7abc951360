"""The transaction simulator: a population, fraud scenarios, delayed labels; day by day, deterministic by seed.

``config`` says what to generate, ``population`` who pays where, ``generate`` the days, ``files`` writes them.
"""

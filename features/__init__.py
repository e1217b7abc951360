"""Feature definitions, pure window formulas, the Redis online store and the offline builder.

Imports only from ``fraudpipe``. Named ``features`` inside this repository; a guard test makes sure the import
resolves here and not to the unrelated PyPI distribution of the same name.
"""

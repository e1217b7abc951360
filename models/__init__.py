"""Training, evaluation, the model registry and the batch scorer with reason codes.

Imports only from ``features`` and ``fraudpipe``. A guard test makes sure ``models`` resolves to this repository.
"""

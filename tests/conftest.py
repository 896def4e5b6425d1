"""Generic fixtures shared by every test file.

The repo root goes on sys.path so tests can `import model...` and `import
encode_swe`, and tests/ too so they can import helper modules kept here
(`import numpy_gptsan`), whatever directory pytest is started from.
"""
import os
import sys

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)
for _path in (TESTS_DIR, REPO_ROOT):
    if _path not in sys.path:
        sys.path.insert(0, _path)


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir():
    """The read-only reference data beside the repo (<repo>/../shared)."""
    path = os.path.join(os.path.dirname(REPO_ROOT), "shared")
    if not os.path.isdir(path):
        pytest.skip("reference data not found: %s (CI puts shared/ beside the repo)" % path)
    return path


@pytest.fixture(scope="module")
def encoder(shared_dir):
    """The released encoder files from shared/reference (for tiny 36,000-id models)."""
    import tiny_model
    return tiny_model.reference_encoder(shared_dir)


@pytest.fixture(scope="module")
def vocab_flags(shared_dir, encoder):
    import tiny_model
    return tiny_model.vocabulary_flags(shared_dir)

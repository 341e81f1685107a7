"""Fixtures of the data tests."""
import pytest

import digits_files


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
  """The digits as an image folder and a Hugging Face dataset (`digits_files`)."""
  return digits_files.write(tmp_path_factory.mktemp("digits"))

"""The one exception the pipeline raises for bad input."""


class DataError(ValueError):
  """Bad data or data flags. The message is one line naming the file, line or flag."""

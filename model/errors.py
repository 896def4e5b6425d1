"""The one exception type for mistakes a user can fix.

Library code raises UserError with a message that names the parameter or file
at fault; the command-line layer (model/cli.py) turns it into one line on
stderr and exit status 2, and names flags where a flag is at fault.
"""


class UserError(Exception):
    """A mistake the user can fix (bad argument, missing file, wrong vocabulary)."""

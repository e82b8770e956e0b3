"""The one exception a user of deepprior should ever see.

Every problem the user can fix (a file that is not an image, a mask of the wrong size, an
impossible option) is raised as :class:`DeepPriorError` with a message that fits on one line.
The command line, the web app and the batch runner print that message and nothing else;
anything else escaping is a bug.
"""


class DeepPriorError(ValueError):
    """A problem with the user's input or options, described in one line."""

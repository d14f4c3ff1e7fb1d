"""The exception that the command line turns into a one-paragraph message, not a traceback."""


class CnnlabError(Exception):
    """A problem with the user's input (config, data, paths) rather than a bug in cnnlab."""

"""The errors that mean "what you gave cannot be used as given" (a file, a row, an option): their message
names it and says what to do, so the command-line tools print them as one line, without a traceback
(`fairseq_compat.install(command_line=True)`; OFA_PROMPT_TRACEBACK=1 prints the traceback too)."""


class InputError(Exception):
    """A file, row or option that cannot be used as given; the message says which and what to do."""

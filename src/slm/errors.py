"""The one exception type for problems a user can fix.

Library code raises `SLMError` with what went wrong, where, and what to do; the CLI turns it
into one line on stderr and an exit code. Anything else that escapes is a bug in slm.
"""

from __future__ import annotations

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM: stopped by `kill`, after saving


class SLMError(Exception):
    """A user-fixable problem: bad input, missing file, impossible setting."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = EXIT_FAILURE):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message

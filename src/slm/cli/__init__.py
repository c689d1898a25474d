"""The `slm` command line: the only part of slm that prints for the user or exits.

- `main`: `main(argv) -> int`, one small handler per subcommand; errors become one line and
  an exit code.
- `args`: every subcommand's flags (names, help, defaults).
- `chat`: the interactive prompt loop of `slm chat` and how samples are written.
- `progress`: the tqdm bar that `slm train` draws.
"""

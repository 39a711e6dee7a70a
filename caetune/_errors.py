"""The one exception type for bad user input.

Every user-facing entry (CLI flags, config files, dataset paths, search
spaces, storage URLs) raises :class:`InputError`; the CLI turns it into one
line on stderr and exit code 2, before anything is written.
"""


class InputError(ValueError):
    """Bad user input, reported as ``<field>: <what is expected>``.

    Args:
        field: The name of the flag, config field or path at fault, spelled as
            the user spells it (``n_neurons``, ``--run-root``, ``dataset``).
        expected: What would have been accepted, as a short phrase.
    """

    def __init__(self, field: str, expected: str) -> None:
        self.field = field
        self.expected = expected
        super().__init__(f"{field}: {expected}")

"""The ``cope`` sub-commands that live in their own modules (see ``cope.cli.COMMAND_MODULES``)."""

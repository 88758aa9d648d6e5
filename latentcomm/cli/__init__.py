"""The ``latentcomm`` command line: the entry point with its table of subcommands (``main``), the parser every
subcommand starts from (``parser``), and the commands that live in the core (``demo``, ``info``)."""

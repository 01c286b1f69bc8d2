"""One module per ``tailor`` command: ``add_parser(subparsers)`` declares its arguments, ``run(settings, args)``
runs it. Only argparse and `cli.arguments` at module level: the heavy imports wait inside ``run``."""

import sys

from .qtcheck import exit_unless_gui_can_start

if not {"-h", "--help"} & set(sys.argv[1:]):
    exit_unless_gui_can_start()  # before any QApplication: say what to install instead of Qt's abort

from .app import main  # noqa: E402

sys.exit(main())

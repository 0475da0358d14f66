from sweep.quick_exit import QuickExit
from sweep.report.cli import main

QuickExit().run(main)

from sweep.report.cli import main

main()

from imagen4ctl.cli import main

main()

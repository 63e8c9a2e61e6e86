from escalations.cli import main

main()

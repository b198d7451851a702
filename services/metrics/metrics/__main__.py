from metrics.app import main

main()

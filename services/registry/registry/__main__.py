from registry.app import main

main()

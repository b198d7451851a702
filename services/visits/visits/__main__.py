from visits.app import main

main()

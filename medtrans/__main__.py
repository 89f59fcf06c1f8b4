from medtrans.cli import main

main()

from rdrop_seq.cli import main

main()

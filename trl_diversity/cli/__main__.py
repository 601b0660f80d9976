from trl_diversity.cli.main import main

main()

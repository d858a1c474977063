from pyneuro.cli import main

raise SystemExit(main())

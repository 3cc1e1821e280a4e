from splice.cli import main

raise SystemExit(main())

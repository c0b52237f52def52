from proxy.cli.entry import main

raise SystemExit(main())

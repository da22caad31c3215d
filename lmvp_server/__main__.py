from lmvp_server.cli import main

raise SystemExit(main())

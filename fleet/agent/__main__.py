from fleet.agent.cli import main

raise SystemExit(main())

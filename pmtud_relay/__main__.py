from pmtud_relay.cli import main

raise SystemExit(main())

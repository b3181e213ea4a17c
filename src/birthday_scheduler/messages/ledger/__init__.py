"""SQL for the message ledger, by role. Rules live in planning.py, sweep.py and delivery/;
the planning table's SQL is in schedules.py."""

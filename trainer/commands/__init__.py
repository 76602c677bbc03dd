"""The trainer's commands, one per pipeline pod; each returns the result its pod hands to xcom."""

"""The operations centre's web console: fleet, rollouts, readings, alarms (docs/console.md)."""

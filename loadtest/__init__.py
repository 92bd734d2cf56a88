"""Load-test harness: drives Gate like a busy switch fleet and reconciles to the micro."""

"""Background work: scheduled jobs, retention, list updates, alerts and notifications."""

"""What every capability stands on: settings, errors, access, credentials, telemetry, the job queue."""

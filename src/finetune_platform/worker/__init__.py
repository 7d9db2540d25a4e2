"""The job queue: a Celery app whose messages carry only job ids, and workers that run them off the database."""

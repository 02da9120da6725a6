"""Running a job: the driver plans and schedules, Ray actors segment and write their own chunks."""

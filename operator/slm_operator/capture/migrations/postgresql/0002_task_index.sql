-- The calls of one route's task, newest or oldest first: what a FineTuneJob with usageStore.task exports.
CREATE INDEX captured_calls_route_task_time ON captured_calls (route, task, time);

//! kflow-tasks

//! kflow-core

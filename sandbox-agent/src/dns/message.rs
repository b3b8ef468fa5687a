//! DNS messages: parse queries, build refusals, filter upstream answers.

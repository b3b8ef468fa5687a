//! Detection: the name a client asks for, from the first bytes of its connection.

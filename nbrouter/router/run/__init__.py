"""Running calls: the attempt loop, attempt deadlines, the background event loop, the HTTP senders, the response cache."""

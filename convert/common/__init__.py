"""What every layer shares: the error type, safe file writing, JSON-lines reading, the text form for
near-duplicate checks. The bottom of the stack: it imports nothing from convert/, runtime/ or edgeft/ but itself."""

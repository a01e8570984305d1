-- Operators look a contact up by email (the dashboard's contact page), case-insensitively.
CREATE INDEX IF NOT EXISTS contacts_email_lower_idx ON contacts (lower(email));

-- One database per service: each owns its tables and nothing else reads them.
-- UTF8 whatever the cluster's default (a SQL_ASCII database counts varchar lengths in
-- bytes, and the services refuse to start on one); the C locale exists everywhere.
CREATE DATABASE auth ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
CREATE DATABASE connections ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
CREATE DATABASE activities ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;

-- One database per service: each owns its tables and nothing else reads them.
CREATE DATABASE auth;
CREATE DATABASE connections;
CREATE DATABASE activities;

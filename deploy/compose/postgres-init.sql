-- One database per service (a service never reads another's database), created on the first
-- start of the postgres container (/docker-entrypoint-initdb.d runs only on an empty volume).
-- Each service runs its own migrations at start. The role `whistle` is POSTGRES_USER in
-- compose.yaml; in production give each service its own role that owns only its database.
CREATE DATABASE whistle_intake OWNER whistle;
CREATE DATABASE whistle_dispatch OWNER whistle;
CREATE DATABASE whistle_department_gateway OWNER whistle;
CREATE DATABASE whistle_evaluation OWNER whistle;

from services.migrations_env import run

run()

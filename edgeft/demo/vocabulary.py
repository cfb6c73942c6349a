"""The demo shop's words: cities, product categories and names, people's names.

Shared by the task generator (`sql_task`, which builds the database and the questions from them) and the tiny
test-fixture base (`base_lm`, whose corpus names them in plain sentences so its tokenizer has whole tokens for
them), so neither module imports the other.
"""

CITIES = ["Lisbon", "Oslo", "Dublin", "Madrid", "Vienna", "Prague", "Berlin", "Paris", "Rome", "Athens", "Warsaw",
          "Zurich", "Milan", "Porto", "Lyon", "Munich", "Tallinn", "Riga", "Sofia", "Krakow", "Seville", "Bergen"]
CATEGORIES = ["books", "toys", "garden", "kitchen", "music", "sports", "office", "pets", "tools", "shoes"]
FIRST = ["Ana", "Ben", "Carla", "Dan", "Eva", "Farid", "Greta", "Hugo", "Ines", "Jon", "Kira", "Liam", "Mia",
         "Nils", "Olga", "Pablo", "Rosa", "Sven", "Tara", "Umar", "Vera", "Will", "Yara", "Zoe"]
LAST = ["Silva", "Berg", "Novak", "Costa", "Meyer", "Rossi", "Dubois", "Kowalski", "Moreau", "Jensen", "Lopez",
        "Horvat", "Weber", "Ferreira", "Nagy", "Larsen"]
ADJECTIVES = ["Red", "Blue", "Tiny", "Smart", "Classic", "Quiet", "Solar", "Rapid", "Golden", "Silver", "Urban",
              "Wild"]
NOUNS = {"books": "Novel", "toys": "Robot", "garden": "Hose", "kitchen": "Kettle", "music": "Guitar",
         "sports": "Racket", "office": "Stapler", "pets": "Leash", "tools": "Drill", "shoes": "Sneaker"}

"""Write the bundled default corpus: original recipes composed from hand-written dish templates.

Run from the repository root: ``python scripts/make_corpus.py``. The output is committed; this
script documents where it came from and regenerates it byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path("src/chefgenius/data/corpus/recipes.jsonl")


def stir_fry(p: str, veg: str, sauce: str) -> dict:
    return {
        "title": f"{p.title()} and {veg.title()} Stir-Fry",
        "ingredients": [f"1 lb {p}, cut into strips", f"2 cups {veg}, sliced", "1 onion, sliced",
                        "2 cloves garlic, minced", f"3 tbsp {sauce}", "1 tbsp vegetable oil", "1 tsp cornstarch",
                        "2 cups cooked rice"],
        "directions": [f"Toss the {p} with the cornstarch.", "Heat the oil in a large skillet over high heat.",
                       f"Cook the {p} for 4 minutes, stirring, then set it aside.",
                       f"Add the onion, garlic and {veg} and cook for 3 minutes.",
                       f"Return the {p} to the pan, add the {sauce} and toss until glossy.",
                       "Serve hot over the rice."],
    }


def soup(veg: str, herb: str) -> dict:
    return {
        "title": f"Creamy {veg.title()} Soup",
        "ingredients": [f"4 cups {veg}, chopped", "1 onion, diced", "2 cloves garlic, minced",
                        "4 cups vegetable broth", "1/2 cup cream", "2 tbsp butter", f"1 tsp dried {herb}",
                        "salt and pepper"],
        "directions": ["Melt the butter in a large pot over medium heat.",
                       "Cook the onion and garlic until soft, about 5 minutes.",
                       f"Add the {veg}, the broth and the {herb}.",
                       f"Simmer for 25 minutes, until the {veg} is tender.",
                       "Blend until smooth and stir in the cream.", "Season with salt and pepper and serve."],
    }


def roast(veg: str, spice: str) -> dict:
    return {
        "title": f"Roasted {veg.title()} with {spice.title()}",
        "ingredients": [f"2 lb {veg}, cut into chunks", "3 tbsp olive oil", f"1 tsp {spice}",
                        "1/2 tsp salt", "1/4 tsp black pepper", "1 tbsp chopped parsley"],
        "directions": ["Heat the oven to 425 degrees F.",
                       f"Toss the {veg} with the oil, {spice}, salt and pepper.",
                       "Spread in a single layer on a baking sheet.",
                       "Roast for 30 minutes, turning once, until browned.",
                       "Sprinkle with parsley before serving."],
    }


def pasta(main: str, cheese: str) -> dict:
    return {
        "title": f"Pasta with {main.title()} and {cheese.title()}",
        "ingredients": ["12 oz pasta", f"2 cups {main}", "3 tbsp olive oil", "3 cloves garlic, sliced",
                        f"1/2 cup grated {cheese}", "1/4 tsp red pepper flakes", "salt"],
        "directions": ["Cook the pasta in salted boiling water until al dente.",
                       "Reserve 1/2 cup of the cooking water and drain.",
                       "Warm the oil and garlic in a skillet over medium heat.",
                       f"Add the {main} and cook for 5 minutes.",
                       "Add the pasta, the pepper flakes and a splash of the cooking water.",
                       f"Toss with the {cheese} and serve at once."],
    }


def salad(green: str, extra: str, dressing: str) -> dict:
    return {
        "title": f"{green.title()} Salad with {extra.title()}",
        "ingredients": [f"6 cups {green}", f"1 cup {extra}", "1/4 cup toasted walnuts", f"3 tbsp {dressing}",
                        "2 tbsp olive oil", "1 tsp honey", "salt and pepper"],
        "directions": [f"Whisk the {dressing}, oil, honey, salt and pepper together.",
                       f"Wash and dry the {green} and place it in a large bowl.",
                       f"Add the {extra} and the walnuts.",
                       "Pour the dressing over the salad and toss just before serving."],
    }


def frittata(veg: str, cheese: str) -> dict:
    return {
        "title": f"{veg.title()} and {cheese.title()} Frittata",
        "ingredients": ["8 eggs", "1/4 cup milk", f"1 cup {veg}, chopped", f"1/2 cup shredded {cheese}",
                        "1 tbsp butter", "1/2 tsp salt", "1/4 tsp pepper"],
        "directions": ["Heat the oven to 375 degrees F.", "Beat the eggs with the milk, salt and pepper.",
                       f"Melt the butter in an ovenproof skillet and cook the {veg} for 4 minutes.",
                       "Pour in the eggs and cook without stirring for 3 minutes.",
                       f"Sprinkle with the {cheese} and bake for 12 minutes, until set.",
                       "Cut into wedges and serve warm."],
    }


def curry(main: str, veg: str) -> dict:
    return {
        "title": f"{main.title()} Curry with {veg.title()}",
        "ingredients": [f"1 lb {main}", f"2 cups {veg}", "1 can coconut milk", "2 tbsp curry paste",
                        "1 onion, diced", "1 tbsp grated ginger", "1 tbsp oil", "cooked rice for serving"],
        "directions": ["Heat the oil in a deep pan over medium heat.",
                       "Cook the onion and ginger until fragrant, about 4 minutes.",
                       "Stir in the curry paste and cook for 1 minute.",
                       f"Add the {main}, the {veg} and the coconut milk.",
                       "Simmer for 20 minutes, stirring now and then.", "Serve over rice."],
    }


def muffins(fruit: str, spice: str) -> dict:
    return {
        "title": f"{fruit.title()} Muffins",
        "ingredients": ["2 cups flour", "3/4 cup sugar", "2 tsp baking powder", "1/2 tsp salt",
                        f"1 tsp {spice}", "1 cup milk", "1/3 cup melted butter", "1 egg", f"1 1/2 cups {fruit}"],
        "directions": ["Heat the oven to 400 degrees F and line a muffin tin.",
                       f"Mix the flour, sugar, baking powder, salt and {spice} in a bowl.",
                       "Whisk the milk, butter and egg in another bowl.",
                       "Stir the wet ingredients into the dry ones until just combined.",
                       f"Fold in the {fruit}.", "Fill the cups two thirds full.",
                       "Bake for 20 minutes, until a toothpick comes out clean."],
    }


def tacos(main: str, topping: str) -> dict:
    return {
        "title": f"{main.title()} Tacos with {topping.title()}",
        "ingredients": [f"1 lb {main}", "1 tbsp chili powder", "1 tsp cumin", "1 lime, juiced",
                        "8 small tortillas", f"1 cup {topping}", "1/2 cup sour cream", "1 tbsp oil"],
        "directions": [f"Season the {main} with the chili powder and cumin.",
                       f"Heat the oil in a skillet and cook the {main} until done, about 8 minutes.",
                       "Squeeze the lime over the pan and stir.", "Warm the tortillas in a dry pan.",
                       f"Fill each tortilla with the {main} and top with {topping} and sour cream."],
    }


def fish(fish_name: str, herb: str) -> dict:
    return {
        "title": f"Baked {fish_name.title()} with {herb.title()} Butter",
        "ingredients": [f"4 {fish_name} fillets", "3 tbsp butter, softened", f"2 tbsp chopped {herb}",
                        "1 lemon", "1 clove garlic, minced", "salt and pepper"],
        "directions": ["Heat the oven to 400 degrees F.", f"Mix the butter, {herb}, garlic and lemon zest.",
                       f"Place the {fish_name} in a baking dish and season with salt and pepper.",
                       f"Spread the {herb} butter over the fillets.",
                       "Bake for 12 to 15 minutes, until the fish flakes easily.",
                       "Serve with lemon wedges."],
    }


def rice(main: str, veg: str) -> dict:
    return {
        "title": f"{main.title()} Fried Rice with {veg.title()}",
        "ingredients": ["3 cups cooked rice, cold", f"1 cup {main}, diced", f"1 cup {veg}", "2 eggs",
                        "3 green onions, sliced", "2 tbsp soy sauce", "1 tbsp sesame oil"],
        "directions": ["Heat the sesame oil in a wok over high heat.", f"Cook the {main} for 3 minutes.",
                       f"Add the {veg} and the green onions and cook for 2 minutes.",
                       "Push everything aside and scramble the eggs in the empty space.",
                       "Add the rice and soy sauce and stir-fry until hot."],
    }


def smoothie(fruit: str, extra: str) -> dict:
    return {
        "title": f"{fruit.title()} {extra.title()} Smoothie",
        "ingredients": [f"1 cup frozen {fruit}", f"1 {extra}" if extra == "banana" else f"1/2 cup {extra}",
                        "1 cup milk", "1/2 cup plain yogurt", "1 tbsp honey"],
        "directions": ["Put everything in a blender.", "Blend until smooth, about 1 minute.",
                       "Pour into two glasses and serve at once."],
    }


def cookies(mix_in: str, sugar: str) -> dict:
    return {
        "title": f"{mix_in.title()} Cookies",
        "ingredients": ["1 cup butter, softened", f"1 cup {sugar}", "2 eggs", "1 tsp vanilla", "2 1/4 cups flour",
                        "1 tsp baking soda", "1/2 tsp salt", f"2 cups {mix_in}"],
        "directions": ["Heat the oven to 375 degrees F.", f"Beat the butter and {sugar} until fluffy.",
                       "Beat in the eggs and vanilla.", "Stir in the flour, baking soda and salt.",
                       f"Fold in the {mix_in}.", "Drop rounded spoonfuls onto a baking sheet.",
                       "Bake for 9 to 11 minutes, until golden at the edges."],
    }


def sandwich(filling: str, bread: str) -> dict:
    return {
        "title": f"Grilled {filling.title()} Sandwich on {bread.title()}",
        "ingredients": [f"4 slices {bread}", f"1 cup {filling}", "4 slices cheddar cheese", "2 tbsp butter",
                        "1 tomato, sliced"],
        "directions": ["Butter one side of each slice of bread.",
                       f"Layer the cheese, {filling} and tomato on the unbuttered sides of two slices.",
                       "Top with the other slices, buttered side out.",
                       "Cook in a skillet over medium heat for 3 minutes per side, until golden.",
                       "Cut in half and serve."],
    }


def pancakes(fruit: str, topping: str) -> dict:
    return {
        "title": f"{fruit.title()} Pancakes with {topping.title()}",
        "ingredients": ["1 1/2 cups flour", "2 tbsp sugar", "2 tsp baking powder", "1/4 tsp salt",
                        "1 1/4 cups milk", "1 egg", "3 tbsp melted butter", f"1 cup {fruit}", f"{topping} for serving"],
        "directions": ["Whisk the flour, sugar, baking powder and salt together.",
                       "Whisk the milk, egg and butter, then stir into the flour until just mixed.",
                       f"Fold in the {fruit}.", "Heat a greased griddle over medium heat.",
                       "Pour 1/4 cup of batter per pancake and cook until bubbles form, then flip.",
                       f"Serve warm with {topping}."],
    }


RECIPES = (
    [stir_fry(p, v, s) for p, v, s in [("chicken", "broccoli", "soy sauce"), ("beef", "bell pepper", "oyster sauce"),
                                       ("tofu", "snow peas", "teriyaki sauce"), ("shrimp", "zucchini", "hoisin sauce"),
                                       ("pork", "green beans", "black bean sauce"), ("chicken", "bok choy", "sweet chili sauce"),
                                       ("beef", "mushrooms", "soy sauce"), ("tofu", "carrots", "peanut sauce"),
                                       ("shrimp", "asparagus", "garlic sauce")]]
    + [soup(v, h) for v, h in [("carrot", "thyme"), ("tomato", "basil"), ("potato", "rosemary"),
                               ("mushroom", "thyme"), ("pumpkin", "sage"), ("cauliflower", "oregano"),
                               ("sweet potato", "cumin"), ("broccoli", "tarragon"), ("leek", "parsley")]]
    + [roast(v, s) for v, s in [("potatoes", "paprika"), ("carrots", "cumin"), ("brussels sprouts", "garlic powder"),
                                ("cauliflower", "curry powder"), ("butternut squash", "cinnamon"), ("beets", "thyme"),
                                ("sweet potatoes", "smoked paprika"), ("parsnips", "nutmeg")]]
    + [pasta(m, c) for m, c in [("spinach", "parmesan"), ("cherry tomatoes", "mozzarella"), ("mushrooms", "pecorino"),
                                ("zucchini", "ricotta"), ("broccoli", "parmesan"), ("shrimp", "feta"),
                                ("sausage", "parmesan"), ("peas", "goat cheese"), ("kale", "pecorino")]]
    + [salad(g, e, d) for g, e, d in [("spinach", "strawberries", "balsamic vinegar"),
                                      ("arugula", "pear", "lemon juice"), ("romaine", "croutons", "red wine vinegar"),
                                      ("mixed greens", "goat cheese", "cider vinegar"), ("kale", "apple", "lemon juice"),
                                      ("spinach", "orange", "sherry vinegar"), ("arugula", "beets", "balsamic vinegar"),
                                      ("romaine", "avocado", "lime juice")]]
    + [frittata(v, c) for v, c in [("spinach", "feta"), ("mushroom", "swiss cheese"), ("potato", "cheddar"),
                                   ("asparagus", "goat cheese"), ("bell pepper", "monterey jack"),
                                   ("zucchini", "parmesan"), ("broccoli", "cheddar"), ("tomato", "mozzarella")]]
    + [curry(m, v) for m, v in [("chicken", "spinach"), ("chickpea", "potato"), ("shrimp", "bell pepper"),
                                ("tofu", "eggplant"), ("lentil", "carrot"), ("beef", "potato"),
                                ("chicken", "cauliflower"), ("vegetable", "sweet potato")]]
    + [muffins(f, s) for f, s in [("blueberries", "lemon zest"), ("banana", "cinnamon"), ("apple", "nutmeg"),
                                  ("raspberries", "vanilla"), ("cranberries", "orange zest"), ("pumpkin", "allspice"),
                                  ("peaches", "ginger"), ("strawberries", "vanilla"), ("zucchini", "cinnamon")]]
    + [tacos(m, t) for m, t in [("chicken", "salsa"), ("beef", "shredded lettuce"), ("fish", "cabbage slaw"),
                                ("shrimp", "mango salsa"), ("pork", "pickled onions"), ("black bean", "avocado"),
                                ("turkey", "pico de gallo"), ("mushroom", "corn salsa")]]
    + [fish(f, h) for f, h in [("salmon", "dill"), ("cod", "parsley"), ("tilapia", "basil"), ("halibut", "chive"),
                               ("trout", "tarragon"), ("haddock", "cilantro")]]
    + [rice(m, v) for m, v in [("chicken", "peas"), ("shrimp", "corn"), ("ham", "carrots"), ("tofu", "edamame"),
                               ("pork", "bean sprouts"), ("beef", "broccoli"), ("egg", "mixed vegetables")]]
    + [smoothie(f, e) for f, e in [("strawberries", "banana"), ("mango", "pineapple"), ("blueberries", "banana"),
                                   ("peaches", "oats"), ("raspberries", "spinach"), ("cherries", "banana")]]
    + [cookies(m, s) for m, s in [("chocolate chips", "brown sugar"), ("oatmeal raisin", "brown sugar"),
                                  ("white chocolate macadamia", "sugar"), ("peanut butter chips", "brown sugar"),
                                  ("dried cranberries", "sugar"), ("butterscotch chips", "brown sugar"),
                                  ("toffee bits", "sugar")]]
    + [sandwich(f, b) for f, b in [("ham", "sourdough"), ("turkey", "rye bread"), ("spinach", "whole wheat bread"),
                                   ("roasted peppers", "ciabatta"), ("chicken", "white bread"),
                                   ("mushrooms", "sourdough")]]
    + [pancakes(f, t) for f, t in [("blueberries", "maple syrup"), ("banana", "honey"), ("apple", "whipped cream"),
                                   ("strawberries", "powdered sugar"), ("raspberries", "maple syrup"),
                                   ("chocolate chips", "whipped cream")]]
)


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    titles = [r["title"] for r in RECIPES]
    assert len(set(titles)) == len(titles), "titles must be unique"
    with OUT.open("w") as f:
        for r in RECIPES:
            f.write(json.dumps(r) + "\n")
    print(f"wrote {len(RECIPES)} recipes to {OUT}")


if __name__ == "__main__":
    main()
